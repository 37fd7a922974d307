"""A local Cloud Storage for rehearsals and tests: gcp-storage-emulator (from the package index, the test
extra) with the two things Orbax's writer needs and the emulator lacks. tensorstore reads an object's
generation from the `x-goog-generation` header of a download and makes conditional requests
(ifGenerationMatch / ifGenerationNotMatch) to update OCDBT manifests; without them every checkpoint save
fails with "Malformed StorageGeneration". This wrapper adds both, then serves as the emulator does.

  python launch/gcs_emulator.py --port 9023 --bucket my-bucket     # in memory, until killed

Clients find it through the environment that `emulator_env(url)` returns (docs/pod.md)."""

from __future__ import annotations

import argparse
from http import HTTPStatus


def emulator_env(url: str) -> dict[str, str]:
    """What gcsfs, google-cloud-storage (STORAGE_EMULATOR_HOST) and tensorstore (TENSORSTORE_GCS_HTTP_URL and
    a test token) read to talk to an emulator at `url` instead of Cloud Storage."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else gcsfs waits 60 s on a gRPC probe first
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GOOGLE_CLOUD_PROJECT": "rlvr-local",
    }


def _query(request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _generation(storage, bucket: str, name: str) -> str | None:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except Exception:  # noqa: BLE001 - the emulator's NotFound: the object does not exist
        return None


def _precondition_failed(request, current: str | None) -> HTTPStatus | None:
    """The status a conditional request gets when its condition does not hold (GCS's semantics:
    ifGenerationMatch=0 means "does not exist yet")."""
    match, not_match = _query(request, "ifGenerationMatch"), _query(request, "ifGenerationNotMatch")
    if match is not None and (current or "0") != match:
        return HTTPStatus.PRECONDITION_FAILED
    if not_match is not None and current == not_match:
        return HTTPStatus.NOT_MODIFIED
    return None


def patch_emulator() -> None:
    """Wrap the emulator's download and upload handlers with generations and conditions."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    download, insert = objects.download, objects.insert

    def download_with_generation(request, response, storage, *args, **kwargs):
        current = _generation(storage, request.params["bucket_name"], request.params["object_id"])
        failed = _precondition_failed(request, current) if current is not None else None
        if failed is not None:
            response.status = failed
            return None
        if current is not None:
            response["x-goog-generation"] = current
            response["x-goog-metageneration"] = "1"
        return download(request, response, storage, *args, **kwargs)

    def conditional_insert(request, response, storage, *args, **kwargs):
        name = _query(request, "name")
        if name is not None and _query(request, "ifGenerationMatch") is not None:
            failed = _precondition_failed(request, _generation(storage, request.params["bucket_name"], name))
            if failed is not None:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return insert(request, response, storage, *args, **kwargs)

    swap = {download: download_with_generation, insert: conditional_insert}
    objects.download = download_with_generation  # objects.get calls it for ?alt=media
    server.HANDLERS = tuple(
        (pattern, {method: swap.get(fn, fn) for method, fn in handlers.items()})
        for pattern, handlers in server.HANDLERS
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9023)
    p.add_argument("--bucket", default="rlvr-local", help="created at start")
    args = p.parse_args(argv)
    patch_emulator()
    from gcp_storage_emulator.server import create_server

    create_server(args.host, args.port, in_memory=True, default_bucket=args.bucket).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
