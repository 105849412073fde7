"""Reading, checking and preparing task data."""
