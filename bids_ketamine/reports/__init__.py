"""bids_ketamine.reports."""
