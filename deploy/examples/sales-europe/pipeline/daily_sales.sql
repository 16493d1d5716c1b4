-- Orders and revenue per country and day.
SELECT order_date, country, count(*) AS orders, CAST(sum(amount) AS DECIMAL(38, 2)) AS revenue
FROM output.orders
GROUP BY order_date, country
