package attest

import (
	"fmt"
	"log/slog"
	"runtime/debug"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	tdxabi "github.com/google/go-tdx-guest/abi"
)

// quoteToProto is go-tdx-guest's quote parser (a variable so that a test
// can stand in a parser that panics).
var quoteToProto = tdxabi.QuoteToProto

// guardParse runs a third-party parser, turning a panic into an
// ErrMalformed refusal. Lengths are checked before such parsers run; this
// is the second line, for what those checks missed.
func guardParse[T any](what string, parse func() (T, error)) (out T, err error) {
	defer func() {
		if r := recover(); r != nil {
			var zero T
			out, err = zero, fmt.Errorf("%w: %s failed on this input (recovered panic: %v)", ErrMalformed, what, r)
		}
	}()
	return parse()
}

// MaxCertSize bounds each certificate shipped with evidence (VCEK, VLEK,
// ASK, ARK), checked before it is parsed; AMD's are under 2 KiB.
const MaxCertSize = 16 << 10

// checkEvidenceBounds refuses evidence whose parts are larger than any
// genuine one, before a parser sees them: a report over the TDX quote
// bound (an SEV-SNP report is checked for its exact size later) or an
// oversized certificate.
func checkEvidenceBounds(ev *attestv1.Evidence) error {
	if n := len(ev.GetReport()); n > MaxTDXQuoteInput {
		return fmt.Errorf("%w: report is %d bytes, limit %d", ErrMalformedReport, n, MaxTDXQuoteInput)
	}
	c := ev.GetChain()
	for _, cert := range []struct {
		name string
		der  []byte
	}{{"VCEK", c.GetVcek()}, {"VLEK", c.GetVlek()}, {"ASK", c.GetAsk()}, {"ARK", c.GetArk()}} {
		if len(cert.der) > MaxCertSize {
			return fmt.Errorf("%w: %s certificate is %d bytes, limit %d", ErrMalformedChain, cert.name, len(cert.der), MaxCertSize)
		}
	}
	return nil
}

// recoverEvidence is deferred at the evidence-verification boundary
// (verifyReport): a panic anywhere in verification becomes an ErrMalformed
// refusal, logged with its stack, and the caller counts it under its
// reason like every refusal. A component never dies of its input.
func (v *Verifier) recoverEvidence(ev *attestv1.Evidence, c **Claims, reportData *[]byte, err *error) {
	r := recover()
	if r == nil {
		return
	}
	*c, *reportData = nil, nil
	*err = fmt.Errorf("%w: verifying %q evidence (%d-byte report) failed on this input (recovered panic: %v)", ErrMalformed, ev.GetTee(), len(ev.GetReport()), r)
	log := v.log
	if log == nil {
		log = slog.Default()
	}
	log.Error("evidence verification panicked: refused as malformed (please report this input)",
		"tee", ev.GetTee(), "reportBytes", len(ev.GetReport()), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
}
