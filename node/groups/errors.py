"""Errors of the group coordinator, by fault; each maps to one wire ErrorCode."""

from __future__ import annotations

from tidelog.node.errors import BrokerError
from tidelog.proto import broker_pb2 as pb

__all__ = [
    "CoordinatorNotAvailableError",
    "FencedMemberEpochError",
    "GroupIdNotFoundError",
    "GroupNotEmptyError",
    "NotCoordinatorError",
    "UnknownMemberIdError",
]


class NotCoordinatorError(BrokerError):
    """This node does not coordinate the group (leadership moved): find the coordinator again."""

    code = pb.NOT_COORDINATOR
    retriable = True


class CoordinatorNotAvailableError(BrokerError):
    """The coordinator is loading its partition, or the offsets topic has no leader yet."""

    code = pb.COORDINATOR_NOT_AVAILABLE
    retriable = True


class UnknownMemberIdError(BrokerError):
    """The member is not in the group (it left, or was removed after its session timed out):
    it must give up its partitions without committing and join again with epoch 0."""

    code = pb.UNKNOWN_MEMBER_ID


class FencedMemberEpochError(BrokerError):
    """The member's epoch is stale, or it committed a partition it does not own."""

    code = pb.FENCED_MEMBER_EPOCH


class GroupNotEmptyError(BrokerError):
    code = pb.GROUP_NOT_EMPTY


class GroupIdNotFoundError(BrokerError):
    code = pb.GROUP_ID_NOT_FOUND
