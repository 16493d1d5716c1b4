-- Orders and revenue per day.
SELECT order_date, count(*) AS orders, CAST(sum(amount) AS DECIMAL(38, 2)) AS revenue
FROM output.orders
GROUP BY order_date
