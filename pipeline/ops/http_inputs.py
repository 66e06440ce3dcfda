"""The images of one `snackloc serve` request, whatever form they come in.

- raw bytes: ``Content-Type: image/jpeg``, ``image/png``, any ``image/*`` or
  ``application/octet-stream`` (``curl --data-binary @photo.jpg``);
- multipart form data: every file part is an image (``curl -F image=@a.jpg -F image=@b.png``);
- JSON: ``{"image": BASE64}``, ``{"images": [BASE64, ...]}``, or pixel arrays
  ``{"inputs": [...]}`` (one image or a batch, already ``size``×``size``×3, 0-255: what
  `mlflow models serve` takes).

Every mistake is a ``BadRequest`` with the HTTP status and a reason for the client.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
from dataclasses import dataclass

import numpy as np

MAX_IMAGES = 256  # per request: a larger batch belongs in `snackloc predict`


class BadRequest(Exception):
    """A request the server cannot use: ``status`` and a reason to send back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Upload:
    """One image of a request: encoded bytes to decode, or pixels ready for the model."""

    name: str
    data: bytes | None = None
    pixels: np.ndarray | None = None


def parse(content_type: str, body: bytes, size: int) -> list[Upload]:
    """The images of a request body; ``size`` is the model's input side (for arrays)."""
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadRequest(400, "empty body: send an image (JPEG, PNG...) or JSON")
    if kind.startswith("image/") or kind in {"application/octet-stream", ""}:
        uploads = [Upload("image", data=body)]
    elif kind == "multipart/form-data":
        uploads = _multipart(content_type, body)
    elif kind == "application/json":
        uploads = _json(body, size)
    else:
        raise BadRequest(
            415,
            f"unsupported Content-Type {kind!r}: send image/*, application/octet-stream, "
            "multipart/form-data or application/json",
        )
    if len(uploads) > MAX_IMAGES:
        raise BadRequest(413, f"{len(uploads)} images in one request; at most {MAX_IMAGES}")
    return uploads


def _multipart(content_type: str, body: bytes) -> list[Upload]:
    # The standard library's MIME parser reads form data once given its Content-Type.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest(400, "multipart body without parts (is the boundary right?)")
    uploads = []
    for index, part in enumerate(message.iter_parts()):
        data = part.get_payload(decode=True)
        if data:
            name = part.get_filename() or part.get_param("name", header="content-disposition")
            uploads.append(Upload(str(name or f"part {index}"), data=data))
    if not uploads:
        raise BadRequest(400, "multipart body with no file in it")
    return uploads


def _json(body: bytes, size: int) -> list[Upload]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(422, 'expected a JSON object: {"image": ...}, {"images": [...]} '
                         'or {"inputs": [...]}')  # fmt: skip
    if "image" in payload:
        return [_base64("image", payload["image"])]
    if "images" in payload and isinstance(payload["images"], list):
        return [_base64(f"images[{i}]", item) for i, item in enumerate(payload["images"])]
    for key in ("inputs", "instances"):
        if key in payload:
            return _arrays(payload[key], size)
    raise BadRequest(422, f"no image in the JSON: expected the key image, images or inputs, "
                     f"got {sorted(payload)[:5]}")  # fmt: skip


def _base64(name: str, value: object) -> Upload:
    if not isinstance(value, str):
        raise BadRequest(422, f"{name}: expected a base64 string")
    text = value.split(",", 1)[1] if value.startswith("data:") else value  # a data: URL
    try:
        return Upload(name, data=base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{name}: not valid base64") from None


def _arrays(value: object, size: int) -> list[Upload]:
    try:
        pixels = np.asarray(value, dtype="float32")
    except (ValueError, TypeError):
        raise BadRequest(422, "inputs: not an array of numbers") from None
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
        raise BadRequest(
            422, f"inputs: expected shape (n, {size}, {size}, 3) or ({size}, {size}, 3) "
            f"(RGB 0-255, resized as in training), got {pixels.shape}",
        )  # fmt: skip
    if not np.isfinite(pixels).all():
        raise BadRequest(422, "inputs: NaN or infinite values")
    return [Upload(f"inputs[{i}]", pixels=p) for i, p in enumerate(pixels)]
