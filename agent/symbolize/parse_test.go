package symbolize

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseKallsyms(t *testing.T) {
	const text = `ffffffff81000000 T _stext
ffffffff81000100 t helper_a
ffffffff81000100 T alias_a
ffffffff81200000 D some_data
ffffffff81300000 W weak_fn
ffffffffc0001000 t mod_fn	[nf_tables]
ffffffff81400000 b some_bss
`
	k, err := ParseKallsyms(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr uint64
		want string
		ok   bool
	}{
		{0xffffffff80ffffff, "", false},
		{0xffffffff81000000, "_stext", true},
		{0xffffffff810000ff, "_stext", true},
		{0xffffffff81000150, "helper_a", true}, // first of two at one address
		{0xffffffff81250000, "helper_a", true}, // data symbols are skipped
		{0xffffffff81300010, "weak_fn", true},
		{0xffffffffc0001010, "mod_fn [nf_tables]", true},
	} {
		got, ok := k.Lookup(tc.addr)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Lookup(%#x) = %q, %v; want %q, %v", tc.addr, got, ok, tc.want, tc.ok)
		}
	}
	if k.Len() != 5 {
		t.Errorf("Len = %d, want 5 text symbols", k.Len())
	}

	restricted, err := ParseKallsyms(strings.NewReader("0000000000000000 T _stext\n0000000000000000 t foo\n"))
	if err != nil {
		t.Fatal(err)
	}
	if restricted.Len() != 0 {
		t.Errorf("kptr_restrict table has %d symbols, want 0", restricted.Len())
	}
	if _, ok := restricted.Lookup(0xffffffff81000000); ok {
		t.Error("lookup in an empty table succeeded")
	}
	if _, err := ParseKallsyms(strings.NewReader("zzzz T foo\n")); err == nil {
		t.Error("bad address accepted")
	}
}

func TestParseKallsymsPadding(t *testing.T) {
	// Call padding (__pfx_) and kCFI (__cfi_) symbols right before their
	// function merge with it: one entry per function, padding included.
	const text = `ffffffff81000000 T _stext
ffffffff81000ff0 t __pfx_helper_a
ffffffff81001000 t helper_a
ffffffff81001000 T alias_a
ffffffff81001ff0 T __cfi_cfi_fn
ffffffff81002000 T cfi_fn
ffffffff81002ff0 t __pfx_lonely
ffffffff81003000 T other
ffffffffc0000ff0 t __pfx_mod_fn	[nf_tables]
ffffffffc0001000 t mod_fn	[nf_tables]
`
	k, err := ParseKallsyms(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr uint64
		want string
	}{
		{0xffffffff81000fef, "_stext"},
		{0xffffffff81000ff0, "helper_a"}, // the padding
		{0xffffffff81001000, "helper_a"}, // first of two at one address
		{0xffffffff81001100, "helper_a"},
		{0xffffffff81001ff8, "cfi_fn"},
		{0xffffffff81002010, "cfi_fn"},
		{0xffffffff81002ff4, "lonely"}, // padding without its function
		{0xffffffff81003004, "other"},
		{0xffffffffc0000ff8, "mod_fn [nf_tables]"},
		{0xffffffffc0001010, "mod_fn [nf_tables]"},
	} {
		if got, _ := k.Lookup(tc.addr); got != tc.want {
			t.Errorf("Lookup(%#x) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	if k.Len() != 6 {
		t.Errorf("Len = %d, want 6 (padding merged with its function)", k.Len())
	}
}

func TestParseMaps(t *testing.T) {
	const text = `55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234                       /usr/bin/prog
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 1234                       /usr/bin/prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f1000000000-7f1000100000 r-xp 00028000 fd:00 99                         /opt/my app/lib.so (deleted)
7ffd1000000-7ffd1002000 r-xp 00000000 00:00 0                            [vdso]
`
	ms, err := ParseMaps(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []*Mapping{
		{Start: 0x55d0c0a01000, Limit: 0x55d0c0a02000, Offset: 0x1000, Dev: "08:01", Inode: 1234, Path: "/usr/bin/prog"},
		{Start: 0x7f1000000000, Limit: 0x7f1000100000, Offset: 0x28000, Dev: "fd:00", Inode: 99, Path: "/opt/my app/lib.so (deleted)"},
		{Start: 0x7ffd1000000, Limit: 0x7ffd1002000, Dev: "00:00", Path: "[vdso]"},
	}
	if diff := cmp.Diff(want, ms, cmp.AllowUnexported(Mapping{})); diff != "" {
		t.Errorf("ParseMaps (-want +got):\n%s", diff)
	}
	if !ms[1].Deleted() || ms[0].Deleted() {
		t.Error("Deleted() wrong")
	}
	for _, bad := range []string{
		"55d0c0a01000 r-xp 00001000 08:01 1234 /x\n",
		"zz-55d0c0a02000 r-xp 00001000 08:01 1234 /x\n",
		"1000-2000 r-xp\n",
	} {
		if _, err := ParseMaps(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseMaps(%q) accepted", bad)
		}
	}
}

func TestFind(t *testing.T) {
	ms := []*Mapping{
		{Start: 0x1000, Limit: 0x2000},
		{Start: 0x5000, Limit: 0x6000},
		{Start: 0x6000, Limit: 0x7000},
	}
	for _, tc := range []struct {
		addr uint64
		want int
	}{
		{0xfff, -1}, {0x1000, 0}, {0x1fff, 0}, {0x2000, -1}, {0x5abc, 1}, {0x6000, 2}, {0x7000, -1},
	} {
		got := find(ms, tc.addr)
		var want *Mapping
		if tc.want >= 0 {
			want = ms[tc.want]
		}
		if got != want {
			t.Errorf("find(%#x) = %v, want %v", tc.addr, got, want)
		}
	}
}

func TestLRU(t *testing.T) {
	var evicted []int
	c := newLRU(2, func(k int, _ string) { evicted = append(evicted, k) })
	c.put(1, "a")
	c.put(2, "b")
	c.get(1) // 2 is now least recently used
	c.put(3, "c")
	if _, ok := c.get(2); ok {
		t.Error("2 not evicted")
	}
	if v, ok := c.get(1); !ok || v != "a" {
		t.Error("1 evicted")
	}
	c.remove(1)
	c.clear()
	if diff := cmp.Diff([]int{2, 1, 3}, evicted); diff != "" {
		t.Errorf("evictions (-want +got):\n%s", diff)
	}
	if c.len() != 0 {
		t.Errorf("len after clear = %d", c.len())
	}
}
