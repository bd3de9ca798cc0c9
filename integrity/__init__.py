"""integrity: keeps object storage and the database that references it honest about each other."""
