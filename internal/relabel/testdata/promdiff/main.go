// Command promdiff is a differential test of this package against
// github.com/prometheus/prometheus/model/relabel. It is kept out of the
// module (testdata/ is ignored by the go tool) because importing Prometheus
// would raise k8s.io/* to v0.37.x. To run it:
//
//	mkdir -p /tmp/promcheck/myrelabel /tmp/promcheck/diff
//	cp go.mod go.sum /tmp/promcheck/ && sed -i 's#^module .*#module promcheck#' /tmp/promcheck/go.mod
//	cp internal/relabel/*.go /tmp/promcheck/myrelabel/ && rm /tmp/promcheck/myrelabel/*_test.go
//	cp internal/relabel/testdata/promdiff/main.go /tmp/promcheck/diff/
//	cd /tmp/promcheck && go get github.com/prometheus/prometheus@v0.316.0 && go mod tidy && go run ./diff
//
// It draws 300,000 random rule lists (1-3 rules over every action, with
// regexes, separators, replacements, targets and moduli mixing defaults,
// group references and invalid values), checks that both implementations
// accept and reject the same lists, and runs each accepted list on 5
// random label sets, comparing keep/drop and the resulting labels (after
// removing "__" labels). Cases where Prometheus produced an invalid label
// name (a documented difference, see doc.go) are skipped and counted.
// Result on 2026-11-28: 58,956 valid lists, 0 validity mismatches, 0 output
// mismatches, 10,787 skipped.
package main

import (
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	prom "github.com/prometheus/prometheus/model/relabel"

	my "promcheck/myrelabel"
)

var (
	names   = []string{"__meta_a", "__meta_b", "a", "b", "job", "instance", "__address__", "A"}
	values  = []string{"x", "foo", "Foo;bar", "1", "a\nb", "FOO", "f", "x;x"}
	regexes = []string{"(.*)", "foo", "f(o+)", "(.*);(.*)", "__meta_(.+)", "a|b", "", "(?P<n>x)", ".*\n.*", "(f).*", "x;x", "[a-z]+", "(a)|(b)"}
	repls   = []string{"$1", "", "x_$1", "${1}_y", "$n", "$2", "lit", "$1$2", "${n}"}
	targets = []string{"a", "b", "t_$1", "new", "__tmp", "", "$1", "${n}x", "9bad"}
	seps    = []string{";", "", ","}
	mods    = []uint64{0, 1, 3, 10}
	actions = []string{"replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase"}
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.Intn(len(s))] }

func main() {
	r := rand.New(rand.NewSource(1))
	n, validBoth, validMismatch, outMismatch, dropped, skipped := 0, 0, 0, 0, 0, 0
	for iter := 0; iter < 300000; iter++ {
		nr := 1 + r.Intn(3)
		var mine []my.Config
		var theirs []*prom.Config
		for i := 0; i < nr; i++ {
			c := my.DefaultConfig()
			if r.Intn(2) == 0 {
				c.Regex = pick(r, regexes)
			}
			if r.Intn(2) == 0 {
				c.Replacement = pick(r, repls)
			}
			if r.Intn(4) == 0 {
				c.Separator = pick(r, seps)
			}
			if r.Intn(3) != 0 {
				c.TargetLabel = pick(r, targets)
			}
			if r.Intn(3) == 0 {
				c.Modulus = pick(r, mods)
			}
			c.Action = my.Action(pick(r, actions))
			if c.Action == my.HashMod && r.Intn(4) != 0 && c.Modulus == 0 {
				c.Modulus = 1 + uint64(r.Intn(20))
			}
			for j := r.Intn(3); j > 0; j-- {
				c.SourceLabels = append(c.SourceLabels, pick(r, names))
			}
			mine = append(mine, c)
			pc := prom.DefaultRelabelConfig
			if c.Regex != my.DefaultRegex {
				pc.Regex = prom.MustNewRegexp(c.Regex)
			}
			pc.Replacement, pc.Separator, pc.TargetLabel, pc.Modulus, pc.Action = c.Replacement, c.Separator, c.TargetLabel, c.Modulus, prom.Action(c.Action)
			for _, s := range c.SourceLabels {
				pc.SourceLabels = append(pc.SourceLabels, model.LabelName(s))
			}
			pc.NameValidationScheme = model.LegacyValidation
			theirs = append(theirs, &pc)
		}
		myErr := func() error { _, err := my.Compile(mine); return err }()
		var theirErr error
		for _, pc := range theirs {
			if err := pc.Validate(model.LegacyValidation); err != nil {
				theirErr = err
				break
			}
		}
		n++
		if (myErr == nil) != (theirErr == nil) {
			validMismatch++
			if validMismatch < 10 {
				fmt.Printf("VALIDITY mine=%v theirs=%v cfg=%+v\n", myErr, theirErr, mine)
			}
			continue
		}
		if myErr != nil {
			continue
		}
		validBoth++
		rules, _ := my.Compile(mine)
		for k := 0; k < 5; k++ {
			in := map[string]string{}
			for j := r.Intn(6); j > 0; j-- {
				in[pick(r, names)] = pick(r, values)
			}
			out, keep := rules.Process(in)
			lb := labels.NewBuilder(labels.FromMap(in))
			tkeep, invalid := true, false
			for _, pc := range theirs {
				if !prom.ProcessBuilder(lb, pc) {
					tkeep = false
					break
				}
				lb.Labels().Range(func(l labels.Label) {
					if !my.ValidLabelName(l.Name) {
						invalid = true
					}
				})
			}
			if invalid {
				skipped++
				continue
			}
			tout := map[string]string{}
			lb.Labels().Range(func(l labels.Label) {
				if !strings.HasPrefix(l.Name, "__") && l.Value != "" && my.ValidLabelName(l.Name) {
					tout[l.Name] = l.Value
				}
			})
			if !keep {
				dropped++
			}
			if keep != tkeep || (keep && fmt.Sprint(sorted(out)) != fmt.Sprint(sorted(tout))) {
				outMismatch++
				if outMismatch < 10 {
					fmt.Printf("OUTPUT in=%v cfg=%+v\n mine=%v %v\n theirs=%v %v\n", in, mine, keep, out, tkeep, tout)
				}
			}
		}
	}
	fmt.Println("cases", n, "valid", validBoth, "validity mismatches", validMismatch, "output mismatches", outMismatch, "dropped", dropped, "skipped (upstream made invalid names)", skipped)
	if validMismatch+outMismatch > 0 {
		os.Exit(1)
	}
}

func sorted(m map[string]string) []string {
	var s []string
	for k, v := range m {
		s = append(s, k+"="+v)
	}
	sort.Strings(s)
	return s
}
