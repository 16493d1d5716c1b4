-- Paid and shipped orders, one row per order.
SELECT order_id, customer_id, order_date, 'FR' AS country, amount, status
FROM staging.orders_all
WHERE status IN ('paid', 'shipped') AND amount > 0
