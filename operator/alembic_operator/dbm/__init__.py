"""`kubectl dbm`, the kubectl plugin for the review loop: `cli` reads and acts with the user's credentials, `views`
turns what it read into text or plain data."""
