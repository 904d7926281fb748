"""The aggregate owners: merged partials, windows closed on the watermark (``owner``),
and the last closed window on ``/metrics`` (``exposition``)."""
