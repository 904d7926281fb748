"""The Kafka plumbing: client helpers and topics (``io``), the exactly-once batch stage
(``stage``), outages and retries (``outage``), Faust's transport (``faust_transport``)."""
