package soak

import (
	"bufio"
	"encoding/json"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// LoggedError is one distinct error the components logged: the component,
// the message, how often, and the first line as an example.
type LoggedError struct {
	Component string `json:"component"`
	Message   string `json:"message"`
	Count     int    `json:"count"`
	Example   string `json:"example"`
}

// ErrorTally collects the errors of many logs, distinct by component and
// message.
type ErrorTally struct {
	byKey map[[2]string]*LoggedError
	Total int
}

// maxExample bounds an example line.
const maxExample = 400

// Scan reads one log of component and counts its error lines: slog's
// level=ERROR (text) or "level":"ERROR" (JSON), and Go's "panic:" and
// "fatal error:" lines.
func (t *ErrorTally) Scan(component string, r io.Reader) error {
	if t.byKey == nil {
		t.byKey = map[[2]string]*LoggedError{}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		msg, ok := errorMessage(line)
		if !ok {
			continue
		}
		t.Total++
		k := [2]string{component, msg}
		e, ok := t.byKey[k]
		if !ok {
			ex := line
			if len(ex) > maxExample {
				ex = ex[:maxExample] + "..."
			}
			e = &LoggedError{Component: component, Message: msg, Example: ex}
			t.byKey[k] = e
		}
		e.Count++
	}
	return sc.Err()
}

// Errors returns the distinct errors, most frequent first.
func (t *ErrorTally) Errors() []LoggedError {
	out := make([]LoggedError, 0, len(t.byKey))
	for _, e := range t.byKey {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b LoggedError) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		if a.Component != b.Component {
			return strings.Compare(a.Component, b.Component)
		}
		return strings.Compare(a.Message, b.Message)
	})
	return out
}

// errorMessage reports whether line is an error line and its message.
func errorMessage(line string) (string, bool) {
	switch {
	case strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:"):
		return line, true
	case strings.HasPrefix(line, "{"):
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Level != "ERROR" {
			return "", false
		}
		return rec.Msg, true
	case strings.Contains(line, " level=ERROR "):
		return textField(line, "msg"), true
	}
	return "", false
}

// textField is the value of key=... in a slog text line (quoted or bare).
func textField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	rest := line[i+len(key)+2:]
	if strings.HasPrefix(rest, `"`) {
		if v, err := strconv.QuotedPrefix(rest); err == nil {
			if s, err := strconv.Unquote(v); err == nil {
				return s
			}
		}
	}
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		return rest[:j]
	}
	return rest
}

// RotationTimes are the times of the "WireGuard key rotated" lines of an
// agent's text log (slog's time= field, RFC 3339).
func RotationTimes(log string) []time.Time {
	var out []time.Time
	for _, line := range strings.Split(log, "\n") {
		if textField(" "+line, "msg") != "WireGuard key rotated" {
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, textField(" "+line, "time")); err == nil {
			out = append(out, t)
		}
	}
	return out
}
