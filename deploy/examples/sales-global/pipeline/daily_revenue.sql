-- Europe's days from sales-europe, summed over its countries, and the other regions.
SELECT order_date, 'europe' AS region, CAST(sum(orders) AS BIGINT) AS orders,
       CAST(sum(revenue) AS DECIMAL(38, 2)) AS revenue
FROM input.europe_daily
GROUP BY order_date
UNION ALL
SELECT CAST(order_date AS DATE), region, CAST(orders AS BIGINT), CAST(revenue AS DECIMAL(38, 2))
FROM input.other_regions
