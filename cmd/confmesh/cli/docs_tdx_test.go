package cli

import (
	"os"
	"strings"
	"testing"
)

// TestDocsTDXExample: the `attest verify` example of docs/attestation.md on
// go-tdx-guest's real v5 quote prints exactly what the page shows.
func TestDocsTDXExample(t *testing.T) {
	const page = "../../../docs/attestation.md"
	data, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(data), "<!-- tdx-verify-example -->\n```\n")
	if !ok {
		t.Fatalf("%s has no tdx-verify-example block", page)
	}
	block, _, ok = strings.Cut(block, "```\n<!-- /tdx-verify-example -->")
	if !ok {
		t.Fatalf("%s: tdx-verify-example block not closed", page)
	}
	cmdLine, want, _ := strings.Cut(block, "\n")
	args := strings.Fields(strings.TrimPrefix(cmdLine, "$ confmesh "))
	for i, a := range args {
		if strings.HasPrefix(a, "internal/") {
			args[i] = "../../../" + a // the page's paths are relative to the repository
		}
	}
	r := run(t, args...)
	r.want(t, 0)
	if r.stdout != want {
		t.Errorf("%s: the example's output is stale; the command prints:\n%s", page, r.stdout)
	}
	if !strings.Contains(args[len(args)-1], "945eaacf") {
		t.Errorf("the example no longer pins --report-data")
	}
}
