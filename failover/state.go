package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"lifeboat/hrl"
	"lifeboat/pipeline"
)

const stateName = "state.json"

// savedRecovery is a recovery volume as state.json records it.
type savedRecovery struct {
	State pipeline.RecoveryState `json:"state"`
	Dir   string                 `json:"dir"`
}

type stateFile struct {
	Version  int             `json:"version"`
	Recovery []savedRecovery `json:"recovery"`
}

// loadState reads dir's state.json; none is no recovery volume.
func loadState(dir string) ([]savedRecovery, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("recovery volumes: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 {
		return nil, fmt.Errorf("recovery volumes: %s is damaged (version %d, %v): move it away to start without the recovery volumes it lists",
			filepath.Join(dir, stateName), f.Version, err)
	}
	return f.Recovery, nil
}

// saveState replaces dir's state.json durably.
func saveState(dir string, recs []savedRecovery) error {
	b, err := json.MarshalIndent(stateFile{Version: 1, Recovery: recs}, "", "  ")
	if err != nil {
		return err
	}
	if err := hrl.WriteFileDurably(hrl.OSFS{}, dir, stateName, b); err != nil {
		return fmt.Errorf("recovery volumes: %w", err)
	}
	return nil
}
