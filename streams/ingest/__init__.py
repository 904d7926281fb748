"""The ingest stage, the hot path: per-conversation state and per-window counts
(``conversations``), event ids beyond the memory cache (``event_ids``), the records a
batch sends (``records``), the stage on aiokafka
(``stage``) and the same in child processes (``processes``)."""
