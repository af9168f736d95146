"""The policy evaluator, in parts; `policy_engine.evaluator` is its public face (import from there).

- model: constants, input errors, endpoints, connections, verdicts and attribution
- matchers: compiled peers, ports and rules, and the policy sections (`Subject`) that hold them
- documents: field readers shared by the compilers and the `policy check` document reader
- compile_kubernetes / compile_cilium: policy objects -> `Subject`s
- evaluate: `PolicyEvaluator`, the decision procedure per direction
"""
