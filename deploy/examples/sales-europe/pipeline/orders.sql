-- Every country's orders, as the country products serve them.
SELECT order_id, customer_id, order_date, country, amount FROM input.de_orders
UNION ALL
SELECT order_id, customer_id, order_date, country, amount FROM input.fr_orders
