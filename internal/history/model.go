package history

import (
	"fmt"

	"github.com/anishathalye/porcupine"
)

// state is one key's register. A write whose outcome is unknown leaves the
// version unknown until a later read or compare reveals it.
type state struct {
	exists       bool
	value        string
	version      uint64
	versionKnown bool
}

// Model returns the porcupine model: one register per key (the history is
// partitioned by key), with versions that only grow.
func Model() porcupine.Model {
	m := &porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range history {
				k := op.Input.(Input).Key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			out := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() []any { return []any{state{versionKnown: true}} },
		Step: func(s, in, out any) []any {
			return step(s.(state), in.(Input), out.(Output))
		},
		DescribeOperation: func(in, out any) string { return describe(in.(Input), out.(Output)) },
		DescribeState: func(s any) string {
			st := s.(state)
			if !st.exists {
				return "absent"
			}
			if !st.versionKnown {
				return fmt.Sprintf("%q@?", st.value)
			}
			return fmt.Sprintf("%q@%d", st.value, st.version)
		},
	}
	return m.ToModel()
}

// step returns every state the register may be in after the operation, or
// none if the operation could not have returned out from s.
func step(s state, in Input, out Output) []any {
	switch in.Kind {
	case Get:
		if out.Found != s.exists || (s.exists && out.Value != s.value) {
			return nil
		}
		if s.exists {
			if s.versionKnown && out.Version != s.version {
				return nil
			}
			s.version, s.versionKnown = out.Version, true
		}
		return []any{s}
	case Put:
		if out.Unknown {
			return []any{state{exists: true, value: in.Value}}
		}
		if s.versionKnown && out.Version <= s.version {
			return nil
		}
		return []any{state{exists: true, value: in.Value, version: out.Version, versionKnown: true}}
	case CAS:
		// matches: yes, no, or unknown (the version is not known).
		var match, ambiguous bool
		switch {
		case !s.exists:
			match = in.Expect == 0
		case !s.versionKnown:
			ambiguous = in.Expect != 0
		default:
			match = s.version == in.Expect
		}
		applied := state{exists: true, value: in.Value}
		switch {
		case out.Unknown:
			if ambiguous {
				return []any{applied, s}
			}
			if match {
				return []any{applied}
			}
			return []any{s}
		case out.OK:
			if !match && !ambiguous {
				return nil
			}
			if s.versionKnown && s.exists && out.Version <= s.version {
				return nil
			}
			applied.version, applied.versionKnown = out.Version, true
			return []any{applied}
		default:
			if match {
				return nil
			}
			// A failed compare reports the current version: 0 if absent.
			if !s.exists {
				if out.Version != 0 {
					return nil
				}
				return []any{s}
			}
			if s.versionKnown && out.Version != s.version {
				return nil
			}
			if out.Version == in.Expect {
				return nil
			}
			s.version, s.versionKnown = out.Version, true
			return []any{s}
		}
	}
	return nil
}

func describe(in Input, out Output) string {
	res := ""
	switch {
	case out.Unknown:
		res = "?"
	case in.Kind == Get && !out.Found:
		res = "absent"
	case in.Kind == Get:
		res = fmt.Sprintf("%q@%d", out.Value, out.Version)
	case in.Kind == Put:
		res = fmt.Sprintf("@%d", out.Version)
	default:
		res = fmt.Sprintf("ok=%v @%d", out.OK, out.Version)
	}
	switch in.Kind {
	case Get:
		return fmt.Sprintf("get(%s) -> %s", in.Key, res)
	case Put:
		return fmt.Sprintf("put(%s, %q) -> %s", in.Key, in.Value, res)
	default:
		return fmt.Sprintf("cas(%s, @%d, %q) -> %s", in.Key, in.Expect, in.Value, res)
	}
}
