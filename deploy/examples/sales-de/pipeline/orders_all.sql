-- layer: staging
-- Every order: the shop's export and the orders pushed since, newest copy of each order.
SELECT order_id, customer_id, order_date, CAST(amount AS DECIMAL(12, 2)) AS amount, status
FROM (
    SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY pushed DESC) AS copy
    FROM (
        SELECT order_id, customer_id, CAST(order_date AS DATE) AS order_date, amount, status,
               0 AS pushed
        FROM input.shop_export
        UNION ALL
        SELECT order_id, customer_id, order_date, amount, status, 1 AS pushed
        FROM input.new_orders
    )
)
WHERE copy = 1
