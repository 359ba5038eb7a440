package engine

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(failStopChildEnv) != "" {
		// The fail-stop scenarios abandon wedged Pebble instances on
		// purpose; see TestFailStop.
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}
