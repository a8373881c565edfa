"""Client profiles: ready-to-import VPN settings for Windows, macOS/iOS, Android and Linux that
match this gateway's configuration (``ipsecctl client-profile``).

Sans-I/O: :func:`generate` takes a :class:`GatewayView` (built from the configuration by
:func:`gateway_view`) and a :class:`ProfileRequest`, and returns the files. Nothing secret
goes in unless the request carries it (``--include-password``, ``--p12``).
"""

from __future__ import annotations

from collections.abc import Callable

from ipsecd.profiles import android, apple, linux, windows
from ipsecd.profiles.gateway import gateway_view, profile_request
from ipsecd.profiles.model import ClientAuth, GatewayView, Platform, Profile, ProfileError, ProfileRequest

__all__ = ["ClientAuth", "GatewayView", "Platform", "Profile", "ProfileError", "ProfileRequest", "gateway_view",
           "generate", "profile_request"]

_RENDER: dict[Platform, Callable[[GatewayView, ProfileRequest, str], Profile]] = {
    Platform.WINDOWS: windows.render,
    Platform.APPLE: apple.render,
    Platform.ANDROID: android.render,
    Platform.LINUX: linux.render,
}


def generate(view: GatewayView, req: ProfileRequest, platform: Platform | str) -> Profile:
    """The profile for ``platform``; ProfileError when the platform cannot do what the gateway demands."""
    name = req.display_name or f"{view.server} ({view.conn})"
    return _RENDER[Platform(platform)](view, req, name)
