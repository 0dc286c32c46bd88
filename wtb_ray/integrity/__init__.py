"""The integrity checker: find inconsistencies between the tables, and repair them."""
