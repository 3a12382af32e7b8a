"""Allow ``python -m bids_ketamine``."""

from bids_ketamine.cli.run import main

if __name__ == "__main__":  # pragma: no cover
    main()
