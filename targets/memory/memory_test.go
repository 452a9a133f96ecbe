package memory_test

import (
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/memory"
	"lifeboat/targets/targettest"
)

func TestConformance(t *testing.T) {
	targettest.RunOptions(t, targettest.Options{Persistent: false}, func(t *testing.T) targets.Target {
		return memory.New()
	})
}
