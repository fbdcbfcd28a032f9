package selector

import "testing"

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "platform=systemd", "cluster in (a,b)", "tier!=db,!canary", "version", "a in ()", "a>3", "x notin (a, b ,c),y==z"} {
		f.Add(s, "platform", "systemd")
	}
	f.Fuzz(func(t *testing.T, s, k, v string) {
		sel, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(sel.String())
		if err != nil {
			t.Fatalf("Parse(%q) ok but Parse(String()=%q): %v", s, sel.String(), err)
		}
		if again.String() != sel.String() || again.Specificity() != sel.Specificity() {
			t.Fatalf("round trip of %q: %q (%d) -> %q (%d)", s, sel.String(), sel.Specificity(), again.String(), again.Specificity())
		}
		for _, l := range []map[string]string{nil, {k: v}, {k: v, "platform": "systemd", "cluster": "a"}} {
			if sel.Matches(l) != again.Matches(l) {
				t.Fatalf("%q and its canonical form %q disagree on %v", s, sel.String(), l)
			}
		}
	})
}
