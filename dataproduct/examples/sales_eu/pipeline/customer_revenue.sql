-- layer: output
-- Revenue per customer, with the customer's name and country.
SELECT
    o.customer_id,
    c.name,
    c.country,
    count(*) AS orders,
    sum(o.amount) AS revenue
FROM staging.orders_clean AS o
LEFT JOIN input.customers AS c USING (customer_id)
GROUP BY ALL
ORDER BY revenue DESC
