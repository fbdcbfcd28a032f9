// Package relabel applies Prometheus relabel_configs to a target's labels,
// with Prometheus's semantics, defaults and hashmod sharding.
//
// # Why not import github.com/prometheus/prometheus/model/relabel
//
// It was measured (v0.316.0, the version the module proxy serves): `go get`
// of it raises k8s.io/apimachinery and k8s.io/client-go from v0.34.2 to
// v0.37.1 (and bumps genproto and multierr), which the project pins for its
// kube-apiserver tests. `go list -deps` of model/relabel is 139 packages,
// 38 outside the standard library (prometheus/common, client_model,
// grafana/regexp, cespare/xxhash, x/text, protobuf), against 96 and 2 for
// this package; a minimal program using it is 6.06 MB against 3.27 MB with
// this package. Its Config is also tied to yaml.v2-style UnmarshalYAML and
// a global name-validation scheme. The semantics are small (one ~150-line
// function), so this package re-implements them faithfully, checked against
// the upstream code with the same inputs (testdata/promdiff): the same actions and defaults (separator ";",
// regex "(.*)" anchored as ^(?s:...)$, replacement "$1", action replace),
// the same validation rules, and hashmod as md5 over the joined source
// values, last 8 bytes big-endian, modulo modulus, so existing sharding
// rules put targets in the same shards.
//
// Deliberate differences:
//   - Label names are checked with the legacy Prometheus syntax
//     [a-zA-Z_][a-zA-Z0-9_]*, because profile backends (Parca, Pyroscope)
//     expect it; the upstream default is now UTF-8 names.
//   - A labelmap result that is not a valid label name is skipped, as replace
//     does, instead of producing a target Prometheus would reject later.
//   - Labels with empty values do not exist (as in Prometheus), so they are
//     removed from the input before the rules run. (Upstream would still
//     visit such an input label in labelmap; the difference only shows
//     when an empty value is mapped over an existing label.)
//   - Validation compares keepequal/dropequal's regex with "(.*)" by text;
//     upstream compares pointers, so it rejects an explicit regex: "(.*)".
//   - After the rules run, every label whose name starts with "__" (the
//     __meta_* discovery labels and any scratch labels) is removed, as
//     Prometheus does for targets.
//   - Actions are matched case-insensitively when decoded from YAML or JSON
//     (like upstream) and stored in lower case.
package relabel
