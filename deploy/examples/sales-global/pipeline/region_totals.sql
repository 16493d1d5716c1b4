-- Orders and revenue per region.
SELECT region, CAST(sum(orders) AS BIGINT) AS orders, CAST(sum(revenue) AS DECIMAL(38, 2)) AS revenue
FROM output.daily_revenue
GROUP BY region
