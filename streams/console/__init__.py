"""The demo: a local stack in one command (``demo``) and its terminal view (``live_view``)."""
