"""bids_ketamine.dwi."""
