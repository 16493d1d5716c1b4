-- layer: output
-- Orders and revenue per country and day.
SELECT
    o.order_date,
    coalesce(c.country, 'unknown') AS country,
    count(*) AS orders,
    sum(o.amount) AS revenue
FROM staging.orders_clean AS o
LEFT JOIN input.customers AS c USING (customer_id)
GROUP BY ALL
ORDER BY order_date, country
