"""The twistd plugin's options and service factory: ``twistd -n s3orch --config PATH``."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from s3orch.config import DEFAULT_CONFIG_PATH, ConfigError, load_config


class Options(usage.Options):
    optParameters = [["config", "c", DEFAULT_CONFIG_PATH, "Path to the YAML configuration file."]]

    def postOptions(self) -> None:
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(
                f"invalid configuration {self['config']}:\n  " + "\n  ".join(e.errors)
            ) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from s3orch.service import S3OrchService

    return S3OrchService(options["loaded"], reactor, options["config"])
