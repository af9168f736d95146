"""The policy evaluator: the verdict of one L4 connection under a cluster's policy set, with attribution.

Pure logic: it takes namespaces, pods and policy objects (Kubernetes NetworkPolicy, CiliumNetworkPolicy,
CiliumClusterwideNetworkPolicy as plain dicts, as they appear in YAML) and answers, for a connection,
whether it is allowed, which policies allowed it on egress and on ingress, or which policy (or default
deny) dropped it, with Cilium's drop reason (133 POLICY_DENIED, 181 POLICY_DENY).

Both policy families compile to one internal form: a `Subject` (a policy section that selects pods in one
direction and may switch them into default deny) holding `CompiledRule`s (allow or deny; peers; ports).
The enforcement engine decides the few places where semantics differ:

- `kubernetes` (the primary CNI enforces): only NetworkPolicy is enforced; Cilium objects are ignored
  (and a note says so). `ipBlock` matches any IP, pod IPs included: the Kubernetes docs call ipBlock
  "typically cluster-external" but leave pod IPs implementation-defined, and the upstream e2e suite
  ("should allow egress access to server in CIDR block") expects pod IPs to match, so we follow it.
- `cilium`: NetworkPolicy, CNP and CCNP all add to each endpoint's policy; deny rules override allow;
  default deny is per direction and honours `enableDefaultDeny`; `ipBlock` and CIDR rules never match
  pods or nodes (cilium#9209, "CIDR rules do not apply to Cilium-managed endpoints"); traffic from the
  local host is allowed on ingress (agent default `--allow-localhost=always`).

ICMP: a connection of protocol ICMP or ICMPv6 carries the ICMP type as its port (`policy check` probes
default to echo request, 8 / 128; Hubble's "ICMPv4" reads as ICMP). Under Cilium a rule without an L4 part
allows every protocol, ICMP included; `toPorts` admits TCP, UDP and SCTP only (protocol ANY included), so once
only port rules select an endpoint in a direction ICMP is dropped there; `icmps` fields (type number or name,
family IPv4 by default) admit exactly their (family, type) pairs, as allow or deny rules. NetworkPolicy
cannot name ICMP and Kubernetes leaves other protocols to the plugin ("the behaviour may vary across network
plugins"); under the `kubernetes` engine a rule without ports allows ICMP, a rule with ports does not and an
isolated pod drops it (what Cilium does with NetworkPolicy and what plugins that filter ICMP do), and every
such verdict carries a note saying so. Rendering refuses `icmps` for clusters where the primary CNI enforces.

Loopback (a pod connecting to itself) is evaluated like any other connection; implementations differ
(kubernetes#95879) and the verdict carries a note.

Each direction also reports the rule that decided (`DirectionDecision`): the first matching deny rule,
else the first matching allow rule, named by its place in the policy ("ingress[0]", "egressDeny[1]",
"specs[1].egress[0]"), else "default-deny" (attributed to a policy that only isolates, such as an empty
`{}` rule or a rule-less NetworkPolicy, else to the first that isolates) or "allow-localhost". The flow
enricher (streams.verdicts) stores these per flow; `policy check` prints them as `egress` and `ingress`.

The code lives in the package policy_engine.evaluation (model, matchers, documents, compile_kubernetes,
compile_cilium, evaluate); this module is its public face, and callers import from here.
"""

from __future__ import annotations

from policy_engine.evaluation.compile_cilium import (
    compile_cilium_policy,
)
from policy_engine.evaluation.compile_kubernetes import (
    compile_network_policy,
)
from policy_engine.evaluation.documents import (
    parse_pod,
)
from policy_engine.evaluation.evaluate import (
    PolicyEvaluator,
    checked_connection,
    describe_l4,
    evaluator_from_document,
)
from policy_engine.evaluation.icmp import (
    ECHO_REQUEST,
    ICMP_FAMILIES,
    ICMP_PROTOCOLS,
    ICMP_TYPE_NAMES,
    PROTOCOL_ALIASES,
    icmp_type_number,
    icmp_type_problem,
)
from policy_engine.evaluation.matchers import (
    CIDRPeer,
    CiliumEndpointPeer,
    CiliumSelects,
    CompiledRule,
    EntityPeer,
    K8sSelectorPeer,
    KnpSelects,
    Notes,
    PeerMatcher,
    PodSelection,
    PortMatcher,
    Subject,
    UnevaluablePeer,
)
from policy_engine.evaluation.model import (
    CILIUM_LABEL_SOURCES,
    CILIUM_NS_LABEL,
    CILIUM_NS_LABELS_PREFIX,
    CILIUM_PROTOCOLS,
    CLUSTER_ENTITIES,
    DROP_NONE,
    DROP_POLICY_DENIED,
    DROP_POLICY_DENY,
    ENFORCEMENT_MODES,
    ENGINES,
    ENTITIES,
    IP_ENTITIES,
    K8S_PROTOCOLS,
    KIND_CCNP,
    KIND_CNP,
    KIND_KNP,
    NAMESPACE_NAME_LABEL,
    POLICY_KINDS,
    PROBE_PROTOCOLS,
    RULE_ALLOW_LOCALHOST,
    RULE_DEFAULT_DENY,
    Connection,
    ContainerPort,
    Direction,
    DirectionDecision,
    Endpoint,
    EnforcementMode,
    Engine,
    EvaluatorInputError,
    IPAddress,
    IPNetwork,
    Pod,
    PolicyRef,
    Verdict,
    pod_cilium_labels,
    split_label_source,
)

__all__ = [
    "checked_connection",
    "describe_l4",
    "ECHO_REQUEST",
    "ICMP_FAMILIES",
    "ICMP_PROTOCOLS",
    "ICMP_TYPE_NAMES",
    "PROTOCOL_ALIASES",
    "icmp_type_number",
    "icmp_type_problem",
    "CIDRPeer",
    "CILIUM_LABEL_SOURCES",
    "CILIUM_NS_LABEL",
    "CILIUM_NS_LABELS_PREFIX",
    "CILIUM_PROTOCOLS",
    "CLUSTER_ENTITIES",
    "CiliumEndpointPeer",
    "CiliumSelects",
    "CompiledRule",
    "Connection",
    "ContainerPort",
    "DROP_NONE",
    "DROP_POLICY_DENIED",
    "DROP_POLICY_DENY",
    "Direction",
    "DirectionDecision",
    "ENFORCEMENT_MODES",
    "ENGINES",
    "ENTITIES",
    "Endpoint",
    "EnforcementMode",
    "Engine",
    "EntityPeer",
    "EvaluatorInputError",
    "IPAddress",
    "IPNetwork",
    "IP_ENTITIES",
    "K8S_PROTOCOLS",
    "K8sSelectorPeer",
    "KIND_CCNP",
    "KIND_CNP",
    "KIND_KNP",
    "KnpSelects",
    "NAMESPACE_NAME_LABEL",
    "Notes",
    "POLICY_KINDS",
    "PROBE_PROTOCOLS",
    "PeerMatcher",
    "Pod",
    "PodSelection",
    "PolicyEvaluator",
    "PolicyRef",
    "PortMatcher",
    "RULE_ALLOW_LOCALHOST",
    "RULE_DEFAULT_DENY",
    "Subject",
    "UnevaluablePeer",
    "Verdict",
    "compile_cilium_policy",
    "compile_network_policy",
    "evaluator_from_document",
    "parse_pod",
    "pod_cilium_labels",
    "split_label_source",
]
