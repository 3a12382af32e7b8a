"""bids_ketamine.interfaces."""
