"""The kube API stand-in moved into the package (netwarden.kube_standin: `netwarden up` serves it as the
demo clusters' API); tests keep importing it from here."""

from netwarden.kube_standin import RESOURCE_TYPES, KubeApiStub, RecordedRequest, ResourceType, StubError

__all__ = ["RESOURCE_TYPES", "KubeApiStub", "RecordedRequest", "ResourceType", "StubError"]
