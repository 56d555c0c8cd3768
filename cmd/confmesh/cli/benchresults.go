package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// resultsFlag adds --results, which stores a bench's JSON figures under key
// in a result set shared by the benches (make bench: bench/results/).
func resultsFlag(cmd *cobra.Command, path *string, key string) {
	cmd.Flags().StringVar(path, "results", "", fmt.Sprintf("also store the JSON figures under the key %q of the JSON object in `FILE` (created if missing; other keys kept)", key))
}

// storeResults stores v under key in the result set at path; nothing when
// path is empty.
func storeResults(path, key string, v any) error {
	if path == "" {
		return nil
	}
	if err := mergeResults(path, key, v); err != nil {
		return failf("--results %s: %v", path, err)
	}
	return nil
}

// mergeResults sets key in the JSON object stored in path (created when
// missing), keeping the other keys.
func mergeResults(path, key string, v any) error {
	obj := map[string]json.RawMessage{}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(b, &obj); err != nil {
			return fmt.Errorf("not a JSON object: %w", err)
		}
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	obj[key] = raw
	out, err := json.MarshalIndent(obj, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(out, '\n'), 0o644)
}
