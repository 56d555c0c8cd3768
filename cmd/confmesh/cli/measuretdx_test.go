package cli

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/measure/measuretest"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
)

// RTMR[1] and RTMR[2] of the direct boot tdxBoot describes (kernel with
// XLF_CAN_BE_LOADED_ABOVE_4G, 3000-byte initrd, 1 GiB): the values
// kvinwang/dstack-mr (commit 4a167f8) computes for the same inputs; the
// package test internal/measure/tdx TestDirectBootVectors says how.
const (
	refTDXRTMR1 = "85ce960df6fbff36037b0e24d3e4d136284924d413f77786b9f78e2583aff53127c3431f40c8cd52cf50e553c15c7701"
	refTDXRTMR2 = "7c51b4e29de404b23f268217fa30b515233d7f97e92156c22bbd840ea64d54fcf9016a216832eedc9be89511a3e84622"
)

// tdxBoot writes the TDX node image: TDVF, an EFI-stub kernel and the
// initrd; args gives them to `measure tdx` (prefix "") or to a simulated
// node (prefix "sim-").
type tdxBoot struct{ tdvf, kernel, initrd string }

func writeTDXBoot(t *testing.T, kernelSeed string) tdxBoot {
	t.Helper()
	dir := t.TempDir()
	k := measuretest.Kernel(kernelSeed, 0x3000)
	k.XLoadFlag = 0x40
	return tdxBoot{
		tdvf:   writeFile(t, dir, "OVMF-tdx.fd", measuretest.SmallTDVF("confmesh-tdvf").Build()),
		kernel: writeFile(t, dir, "vmlinuz", k.Build()),
		initrd: writeFile(t, dir, "initrd.img", measuretest.Fill("confmesh-initrd", 3000)),
	}
}

func (b tdxBoot) args(prefix string) []string {
	return []string{"--" + prefix + "tdvf", b.tdvf, "--" + prefix + "kernel", b.kernel, "--" + prefix + "initrd", b.initrd,
		"--" + prefix + "append", "console=ttyS0 root=/dev/vda1", "--" + prefix + "memory", "1G"}
}

func TestMeasureTDXDirectBoot(t *testing.T) {
	t.Parallel()
	b := writeTDXBoot(t, "confmesh-kernel")
	args := append([]string{"measure", "tdx"}, b.args("")...)
	r := run(t, args...)
	r.want(t, 0)
	if !strings.HasPrefix(r.stdout, "mrtd: "+refTDXSmallTDVF+"\nrtmr1: "+refTDXRTMR1+"\nrtmr2: "+refTDXRTMR2+"\n") ||
		!strings.Contains(r.stdout, "kernel setup:   qemu-patched") {
		t.Fatalf("text output:\n%s", r.stdout)
	}

	r = run(t, append(args, "-o", "json")...)
	r.want(t, 0)
	var j struct {
		MRTD, RTMR0, RTMR1, RTMR2 string
		Inputs                    map[string]string
	}
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if j.MRTD != refTDXSmallTDVF || j.RTMR1 != refTDXRTMR1 || j.RTMR2 != refTDXRTMR2 || j.RTMR0 != "" || j.Inputs["memory"] != "1G (1073741824 bytes)" {
		t.Fatalf("JSON %+v", j)
	}

	r = run(t, append(args, "-o", "policy")...)
	r.want(t, 0)
	p, err := attest.ParsePolicy([]byte(r.stdout))
	if err != nil {
		t.Fatalf("-o policy output is not a valid policy: %v\n%s", err, r.stdout)
	}
	// One accepted tuple, under rtmrSets, on one line of its own: a roll
	// adds the next image's line (TestMeasureTDXRollRoundTrip).
	if p.TDX == nil || len(p.TDX.RTMRs) != 0 || len(p.TDX.RTMRSets) != 1 {
		t.Fatalf("policy tdx %+v\n%s", p.TDX, r.stdout)
	}
	if set := p.TDX.RTMRSets[0]; len(set) != 4 || len(set[0]) != 0 || set[1].String() != refTDXRTMR1 ||
		set[2].String() != refTDXRTMR2 || len(set[3]) != 0 {
		t.Fatalf("policy tdx.rtmrSets %v\n%s", p.TDX.RTMRSets, r.stdout)
	}
	if !strings.Contains(r.stdout, "\n  rtmrSets:\n    - [\"\", \""+refTDXRTMR1+"\", \""+refTDXRTMR2+"\", \"\"]\n") {
		t.Fatalf("the tuple is not one line under rtmrSets:\n%s", r.stdout)
	}

	// The unpatched kernel (later OVMF) is another RTMR[1], same RTMR[2];
	// it needs no --memory.
	r = run(t, "measure", "tdx", "--tdvf", b.tdvf, "--kernel", b.kernel, "--initrd", b.initrd, "--append", "console=ttyS0 root=/dev/vda1", "--kernel-setup", "unpatched")
	r.want(t, 0)
	if strings.Contains(r.stdout, refTDXRTMR1) || !strings.Contains(r.stdout, "rtmr2: "+refTDXRTMR2) {
		t.Fatalf("unpatched:\n%s", r.stdout)
	}
}

func TestMeasureTDXRefusals(t *testing.T) {
	t.Parallel()
	b := writeTDXBoot(t, "refusals")
	notKernel := writeFile(t, t.TempDir(), "notakernel", measuretest.Fill("x", 0x2000))
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"initrd without kernel", []string{"--tdvf", b.tdvf, "--initrd", b.initrd}, 2, "need --kernel"},
		{"append without kernel", []string{"--tdvf", b.tdvf, "--append", "ro"}, 2, "need --kernel"},
		{"memory without kernel", []string{"--tdvf", b.tdvf, "--memory", "1G"}, 2, "need --kernel"},
		{"initrd without memory", []string{"--tdvf", b.tdvf, "--kernel", b.kernel, "--initrd", b.initrd}, 2, "--memory: required with --initrd"},
		{"bad memory", []string{"--tdvf", b.tdvf, "--kernel", b.kernel, "--memory", "lots"}, 2, "want a size such as 2G"},
		{"bad setup", []string{"--tdvf", b.tdvf, "--kernel", b.kernel, "--kernel-setup", "grub"}, 2, "unknown kernel setup \"grub\""},
		{"kernel without tdvf", []string{"--kernel", b.kernel}, 2, "--tdvf: required"},
		{"not a kernel", []string{"--tdvf", b.tdvf, "--kernel", notKernel}, 1, "not a bzImage"},
		{"initrd larger than memory", []string{"--tdvf", b.tdvf, "--kernel", b.kernel, "--initrd", b.initrd, "--memory", "1K"}, 1, "leaves no room"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, append([]string{"measure", "tdx"}, tc.args...)...)
			r.want(t, tc.code, tc.want)
			if r.stdout != "" {
				t.Fatalf("a refusal printed a measurement:\n%s", r.stdout)
			}
		})
	}
}

// TestMeasureTDXRTMRRoundTrip: the policy fragment `measure tdx` prints
// for a direct boot admits a sim-tdx node launched from the same image
// (--sim-tdvf --sim-kernel ...), whose quote carries the RTMRs computed,
// and refuses a node booted with another kernel (same firmware, so the
// same MRTD), another command line or another initrd.
func TestMeasureTDXRTMRRoundTrip(t *testing.T) {
	t.Parallel()
	b := writeTDXBoot(t, "confmesh-kernel")
	other := writeTDXBoot(t, "another-kernel")
	dir := t.TempDir()
	nonce, key := randHex(t, 32), randHex(t, 32)
	r := run(t, append([]string{"measure", "tdx", "-o", "policy"}, b.args("")...)...)
	r.want(t, 0)
	ca := filepath.Join(dir, "tdx-ca")
	pol := writeFile(t, dir, "tdx.yaml", []byte(r.stdout+"trustedRoots: [{kind: simulated-tdx, file: "+filepath.Join(ca, "root.pem")+"}]\n"))

	quote := func(out string, args ...string) string {
		t.Helper()
		o := filepath.Join(dir, out)
		run(t, append([]string{"attest", "report", "--sim-dir", ca, "--nonce", nonce, "--key", key, "-o", o}, args...)...).want(t, 0)
		return filepath.Join(o, "quote.dat")
	}
	verify := func(q string) result {
		return run(t, "attest", "verify", "--report", q, "--nonce", nonce, "--key", key, "--policy", pol, "-o", "json")
	}
	r = verify(quote("good", b.args("sim-")...))
	r.want(t, 0)
	var c attest.Claims
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if c.TEE != attest.TEESimTDX || c.Measurement.String() != refTDXSmallTDVF || c.TDX == nil || len(c.TDX.RTMRs) != 4 ||
		c.TDX.RTMRs[1].String() != refTDXRTMR1 || c.TDX.RTMRs[2].String() != refTDXRTMR2 {
		t.Fatalf("claims %+v", c)
	}

	otherKernel := append([]string{}, b.args("sim-")...)
	otherKernel[3] = other.kernel
	verify(quote("other-kernel", otherKernel...)).want(t, 1, "rejected: rtmr: RTMR not allowed: RTMR1 is not the policy's value")
	otherCmdline := append([]string{}, b.args("sim-")...)
	otherCmdline[7] = "console=ttyS0 root=/dev/vda1 init=/bin/sh"
	verify(quote("other-cmdline", otherCmdline...)).want(t, 1, "rejected: rtmr: RTMR not allowed: RTMR2 is not the policy's value")
	// Without a kernel the node's RTMRs are zero: refused too.
	verify(quote("firmware-only", "--sim-tdvf", b.tdvf)).want(t, 1, "rejected: rtmr: RTMR not allowed: RTMR1 and RTMR2 are not the policy's values")

	// The TDX image flags do not mix with the SEV-SNP ones.
	out := filepath.Join(dir, "never")
	run(t, append([]string{"attest", "report", "--sim-dir", ca, "--nonce", nonce, "--key", key, "-o", out, "--sim-vcpus", "2"}, b.args("sim-")...)...).
		want(t, 2, "a simulated node runs one TEE")
}

// TestMeasureTDXRollRoundTrip: the roll docs/attestation.md describes.
// The policy is the old image's `measure tdx -o policy` with the new
// image's rtmrSets line added (same firmware, so one MRTD); it accepts
// sim-tdx nodes booted with either kernel, refuses a third kernel, and
// `policy check` lists both accepted sets. Dropping the old line after
// the roll refuses the old image.
func TestMeasureTDXRollRoundTrip(t *testing.T) {
	t.Parallel()
	oldImg, newImg, third := writeTDXBoot(t, "kernel-v1"), writeTDXBoot(t, "kernel-v2"), writeTDXBoot(t, "kernel-v3")
	dir := t.TempDir()
	nonce, key := randHex(t, 32), randHex(t, 32)
	fragment := func(b tdxBoot) (doc, set string) {
		t.Helper()
		r := run(t, append([]string{"measure", "tdx", "-o", "policy"}, b.args("")...)...)
		r.want(t, 0)
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(l, "    - [") {
				if set != "" {
					t.Fatalf("more than one rtmrSets line:\n%s", r.stdout)
				}
				set = l
			}
		}
		if set == "" {
			t.Fatalf("no rtmrSets line:\n%s", r.stdout)
		}
		return r.stdout, set
	}
	oldDoc, oldSet := fragment(oldImg)
	_, newSet := fragment(newImg)
	if oldSet == newSet {
		t.Fatalf("two kernels, one RTMR tuple: %s", oldSet)
	}
	ca := filepath.Join(dir, "tdx-ca")
	roots := "trustedRoots: [{kind: simulated-tdx, file: " + filepath.Join(ca, "root.pem") + "}]\n"
	roll := writeFile(t, dir, "roll.yaml", []byte(strings.Replace(oldDoc, oldSet+"\n", oldSet+"\n"+newSet+"\n", 1)+roots))
	after := writeFile(t, dir, "after.yaml", []byte(strings.Replace(oldDoc, oldSet+"\n", newSet+"\n", 1)+roots))

	quote := func(out string, b tdxBoot) string {
		t.Helper()
		o := filepath.Join(dir, out)
		run(t, append([]string{"attest", "report", "--sim-dir", ca, "--nonce", nonce, "--key", key, "-o", o}, b.args("sim-")...)...).want(t, 0)
		return filepath.Join(o, "quote.dat")
	}
	verify := func(pol, q string) result {
		return run(t, "attest", "verify", "--report", q, "--nonce", nonce, "--key", key, "--policy", pol)
	}
	oldQ, newQ, thirdQ := quote("old", oldImg), quote("new", newImg), quote("third", third)
	// (after the first quote: that creates the simulated root)
	r := run(t, "policy", "check", roll)
	r.want(t, 0)
	for _, s := range []string{"TDX RTMRs:", "2 accepted sets (tdx.rtmrSets; a node must match one)",
		"TDX RTMR set 0:", "TDX RTMR set 1:", "RTMR0 not checked", "RTMR3 not checked",
		"RTMR1 " + strings.Split(oldSet, `"`)[3], "RTMR1 " + strings.Split(newSet, `"`)[3]} {
		if !strings.Contains(r.stdout, s) {
			t.Fatalf("policy check output lacks %q:\n%s", s, r.stdout)
		}
	}

	verify(roll, oldQ).want(t, 0)
	verify(roll, newQ).want(t, 0)
	verify(roll, thirdQ).want(t, 1, "rejected: rtmr: RTMR not allowed: the RTMRs match none of the 2 tdx.rtmrSets (closest: tdx.rtmrSets[0], where RTMR1 is not its value)")
	// After the roll the old line is gone: the old image is refused.
	verify(after, newQ).want(t, 0)
	verify(after, oldQ).want(t, 1, "rejected: rtmr: RTMR not allowed: RTMR1 is not the policy's value")
}

// TestAgentSimTDXRTMRs: the agent's simulated TDX node launched with
// --sim-tdvf --sim-kernel ... quotes the MRTD and RTMRs `measure tdx`
// computes, and zero for the registers it does not compute.
func TestAgentSimTDXRTMRs(t *testing.T) {
	t.Parallel()
	b := writeTDXBoot(t, "confmesh-kernel")
	var f agentFlags
	if err := newAgentCmdFlags(&f).Flags().Parse(append([]string{"--name", "agent-tdx-rtmr", "--sim-dir", filepath.Join(t.TempDir(), "ca")}, b.args("sim-")...)); err != nil {
		t.Fatal(err)
	}
	p, err := openAgentProvider(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Report([64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	q, err := tdxabi.QuoteToProto(ev.GetReport())
	if err != nil {
		t.Fatal(err)
	}
	body := q.(*tdxpb.QuoteV4).GetTdQuoteBody()
	zero := strings.Repeat("00", 48)
	got := []string{hex.EncodeToString(body.GetMrTd())}
	for _, r := range body.GetRtmrs() {
		got = append(got, hex.EncodeToString(r))
	}
	want := []string{refTDXSmallTDVF, zero, refTDXRTMR1, refTDXRTMR2, zero}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("agent's sim-tdx quote: MRTD and RTMR0-3\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
