"""A project folder: its images, labels, rounds of training and the ledger of scores."""
