"""The merchant's settings and activity pages, under /admin."""
