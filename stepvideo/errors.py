"""The errors a user can cause (bad files, params, inputs). The CLI prints them as one line."""

from __future__ import annotations


def _collect() -> tuple[type[BaseException], ...]:
    from stepvideo.compat.verify import ReferenceFileError
    from stepvideo.config import ParamsError
    from stepvideo.data.ingest import IngestError
    from stepvideo.data.manifest import ManifestError
    from stepvideo.data.versioning import VersioningError
    from stepvideo.data.video_io import VideoReadError

    return (ParamsError, ManifestError, IngestError, VideoReadError, VersioningError, ReferenceFileError,
            FileNotFoundError, ValueError, ConnectionError)


USER_ERRORS = _collect()
