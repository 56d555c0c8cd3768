package identity

import "fmt"

// Kubernetes name limits (k8s.io/apimachinery/pkg/util/validation).
const (
	dns1123LabelMaxLen     = 63
	dns1123SubdomainMaxLen = 253
)

// validateDNS1123Label checks name the way Kubernetes checks an RFC 1123
// label (namespace names): 1-63 characters of [a-z0-9-], starting and ending
// with an alphanumeric character. what names the thing in errors.
func validateDNS1123Label(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(name) > dns1123LabelMaxLen {
		return fmt.Errorf("%s %q is %d characters, the limit is %d", what, name, len(name), dns1123LabelMaxLen)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			return fmt.Errorf("%s %q contains '.' at offset %d: it must be an RFC 1123 label (no dots)", what, name, i)
		}
	}
	return checkLabel(what, name, name, 0)
}

// validateDNS1123Subdomain checks name the way Kubernetes checks an RFC 1123
// subdomain (node and service account names): at most 253 characters,
// dot-separated non-empty labels of [a-z0-9-] that start and end with an
// alphanumeric character. Like Kubernetes, it does not limit the length of
// a single label.
func validateDNS1123Subdomain(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(name) > dns1123SubdomainMaxLen {
		return fmt.Errorf("%s is %d characters, the limit is %d", what, len(name), dns1123SubdomainMaxLen)
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '.' {
			continue
		}
		if i == start {
			return fmt.Errorf("%s %q has an empty label at offset %d (leading, trailing or doubled '.')", what, name, i)
		}
		if err := checkLabel(what, name, name[start:i], start); err != nil {
			return err
		}
		start = i + 1
	}
	return nil
}

// checkLabel checks one non-empty, dot-free label that starts at offset off
// of full.
func checkLabel(what, full, label string, off int) error {
	for i := 0; i < len(label); i++ {
		c := label[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("%s %q contains upper-case %q at offset %d: it must be lower-case", what, full, c, off+i)
		default:
			return fmt.Errorf("%s %q contains invalid character %q at offset %d: only a-z, 0-9, '-' and '.' are allowed", what, full, c, off+i)
		}
	}
	if label[0] == '-' || label[len(label)-1] == '-' {
		return fmt.Errorf("%s %q has a label that starts or ends with '-': labels must start and end with a-z or 0-9", what, full)
	}
	return nil
}
