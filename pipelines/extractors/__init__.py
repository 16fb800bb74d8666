"""Feature extractors used by `cmi prepare`: audio spectrograms, video frames, images, text,
numeric arrays (vectors and sequences).

Every extractor works on one file (or one batch of already-loaded arrays) and raises
:class:`MediaError` when a sample's media cannot be used, so that prepare can record the sample
in its rejects table and carry on.
"""


class MediaError(Exception):
    """One sample's media cannot be used; ``str(exc)`` is the human-readable reject reason
    (missing file, unreadable, empty, truncated, no audio track, no video stream, ...).
    Not a CmiError: prepare records it in the rejects table and carries on."""
