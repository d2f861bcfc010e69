"""``python -m monai_metalr <command>``; ``add_to_bundle --bundle_root DIR`` writes MetaLR into a MONAI bundle."""

from __future__ import annotations

import functools
import sys

import fire

from .bundle.add_to_bundle import BundleError, add_to_bundle


@functools.wraps(add_to_bundle)  # fire shows add_to_bundle's arguments and docstring
def _add_to_bundle(*args, **kwargs) -> None:
    try:
        add_to_bundle(*args, **kwargs)
    except BundleError as e:  # a user-facing refusal: the message says what and where, no traceback
        print(f"add_to_bundle: {e}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    fire.Fire({"add_to_bundle": _add_to_bundle})


if __name__ == "__main__":
    main()
