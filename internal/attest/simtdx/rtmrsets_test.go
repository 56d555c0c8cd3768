package simtdx_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
)

// rtmrNode is a sim-tdx node whose quote carries RTMR1 = r1, RTMR2 = r2
// (one byte repeated) and zero RTMR0 and RTMR3: a direct boot of one
// kernel (RTMR1) with one initrd and command line (RTMR2).
func rtmrNode(t *testing.T, ca *simtdx.CA, r1, r2 byte) attest.Provider {
	t.Helper()
	z := make([]byte, 48)
	n, err := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd, RTMRs: [][]byte{z, bytes.Repeat([]byte{r1}, 48), bytes.Repeat([]byte{r2}, 48), z}})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// rtmrTuple is one policy tuple: RTMR0 and RTMR3 unchecked.
func rtmrTuple(r1, r2 byte) string {
	return `["", "` + strings.Repeat(hexOf([]byte{r1}), 48) + `", "` + strings.Repeat(hexOf([]byte{r2}), 48) + `", ""]`
}

// TestSimTDXRTMRSets: a policy listing the old and the new image's RTMR
// tuples (a roll) accepts a node booted from either and refuses a third
// kernel, and refuses a node that mixes the old image's RTMR2 with the new
// image's RTMR1: the sets are tuples, not a list per register. The single
// rtmrs keeps working as one tuple.
func TestSimTDXRTMRSets(t *testing.T) {
	ca, root := setup(t)
	old, next := rtmrNode(t, ca, 0xa1, 0xa2), rtmrNode(t, ca, 0xb1, 0xb2)
	third := rtmrNode(t, ca, 0xc1, 0xa2)   // another kernel, the old initrd and command line
	mixed := rtmrNode(t, ca, 0xb1, 0xa2)   // the new kernel with the old command line
	nothing := rtmrNode(t, ca, 0x00, 0x00) // firmware only: no kernel measured
	roll := policy(t, root, "  rtmrSets:\n    - "+rtmrTuple(0xa1, 0xa2)+"\n    - "+rtmrTuple(0xb1, 0xb2)+"\n")
	single := policy(t, root, "  rtmrs: "+rtmrTuple(0xa1, 0xa2)+"\n")

	verify := func(p *attest.Policy, n attest.Provider) error {
		t.Helper()
		ev, exp := bound(t, n)
		_, err := verifier(t, p, nil).Verify(ev, exp)
		return err
	}
	refused := func(name string, err error, want ...string) {
		t.Helper()
		if !errors.Is(err, attest.ErrRTMR) || attest.Reason(err) != "rtmr" {
			t.Fatalf("%s: got %v (reason %s), want reason rtmr", name, err, attest.Reason(err))
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("%s: %q does not say %q", name, err, w)
			}
		}
		t.Logf("%s: %v", name, err)
	}

	for name, n := range map[string]attest.Provider{"old image": old, "new image": next} {
		if err := verify(roll, n); err != nil {
			t.Errorf("rtmrSets refused the %s: %v", name, err)
		}
	}
	refused("third kernel", verify(roll, third),
		"match none of the 2 tdx.rtmrSets", "closest: tdx.rtmrSets[0], where RTMR1 is not its value")
	refused("new kernel, old command line", verify(roll, mixed),
		"match none of the 2 tdx.rtmrSets", "closest: tdx.rtmrSets[0], where RTMR1 is not its value")
	refused("no kernel", verify(roll, nothing),
		"match none of the 2 tdx.rtmrSets", "closest: tdx.rtmrSets[0], where RTMR1 and RTMR2 are not its values")

	// A node closer to the second set is measured against that one.
	newKernelOtherCmdline := rtmrNode(t, ca, 0xb1, 0xc2)
	refused("new kernel, another command line", verify(roll, newKernelOtherCmdline),
		"closest: tdx.rtmrSets[1], where RTMR2 is not its value")

	// The single rtmrs is one tuple: the old image only.
	if err := verify(single, old); err != nil {
		t.Errorf("rtmrs refused its own image: %v", err)
	}
	refused("rtmrs, new image", verify(single, next), "RTMR1 and RTMR2 are not the policy's values")
	refused("rtmrs, third kernel", verify(single, third), "RTMR1 is not the policy's value")
}
