"""The risk stage: per-sender rules (``rules``) and the stage that applies them on the
sender-activity topic (``stage``)."""
