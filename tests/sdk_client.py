"""Drive one of Runware's Python SDKs against a server: a JSON spec on stdin, one JSON outcome per case out.

Run as a subprocess with that SDK first on sys.path: `runware` 0.5 and `runware-sdk` 1.8 both install
a package named `runware`, so one interpreter cannot hold both (tests/sdkutil.py sets this up).
Spec: {"sdk": "runware" | "runware-sdk", "transport": "websocket" | "rest", "url": ..., "api_key": ...,
"max_size": bool, "cases": [{"name", "params"}]}; async tasks are polled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time


def _error(exc: BaseException) -> dict:
    raw = getattr(exc, "error_data", None)
    return {"ok": False, "type": type(exc).__name__, "code": getattr(exc, "code", None),
            "retryable": getattr(exc, "retryable", None), "status_code": getattr(exc, "status_code", None),
            "parameter": getattr(exc, "parameter", None), "message": str(exc)[:600],
            "raw_code": raw.get("code") if isinstance(raw, dict) else None}


async def run_legacy(spec: dict) -> list[dict]:
    """`runware` 0.5: WebSocket only, IAudioInference dataclasses, getResponse polling for async."""
    from runware import IAudioInference, Runware

    client = Runware(api_key=spec["api_key"], url=spec["url"])
    out = []
    try:
        try:
            await client.connect()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            return [{"name": c["name"], **_error(exc)} for c in spec["cases"]]
        for case in spec["cases"]:
            start = time.monotonic()
            try:
                result = await client.audioInference(IAudioInference(**case["params"]))
                if not isinstance(result, list):  # async: an IAsyncTaskResponse, then poll
                    result = await client.getResponse(taskUUID=result.taskUUID,
                                                      numberResults=case["params"].get("numberResults", 1))
                items = [dataclasses.asdict(r) for r in result]
                out.append({"name": case["name"], "ok": True, "items": items, "seconds": time.monotonic() - start})
            except Exception as exc:  # noqa: BLE001
                out.append({"name": case["name"], **_error(exc), "seconds": time.monotonic() - start})
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), 10)
        except Exception:  # noqa: BLE001
            pass
    return out


async def run_current(spec: dict) -> list[dict]:
    """`runware-sdk` 1.8: client.run() over WebSocket or REST (async delivery by default)."""
    from runware import Runware

    config = {"transport": spec["transport"]}
    config["ws_base_url" if spec["transport"] == "websocket" else "http_base_url"] = spec["url"]
    if spec.get("max_size"):  # its WebSocket frames default to 1 MiB; lift that for inline WAV
        import websockets
        from runware import RuntimeDependencies

        config["dependencies"] = RuntimeDependencies(
            ws_connect=lambda url: websockets.connect(url, max_size=None))
    client = Runware(api_key=spec["api_key"], **config)
    out = []
    try:
        for case in spec["cases"]:
            start = time.monotonic()
            try:
                options = None
                if case.get("timeout_ms"):
                    from runware import RunOptions

                    options = RunOptions(timeout=case["timeout_ms"])
                items = await client.run({"taskType": "audioInference", **case["params"]}, options)
                out.append({"name": case["name"], "ok": True, "items": items, "seconds": time.monotonic() - start})
            except Exception as exc:  # noqa: BLE001
                out.append({"name": case["name"], **_error(exc), "seconds": time.monotonic() - start})
    finally:
        try:
            await asyncio.wait_for(client.close(), 10)
        except Exception:  # noqa: BLE001
            pass
    return out


def main() -> None:
    spec = json.load(sys.stdin)
    runner = run_legacy if spec["sdk"] == "runware" else run_current
    results = asyncio.run(runner(spec))
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
