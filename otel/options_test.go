package inboxotel_test

import (
	"strings"
	"testing"

	inboxotel "github.com/pginbox/inbox/otel"
)

// TestNewRejectsBadOptions: New names the option that is wrong.
func TestNewRejectsBadOptions(t *testing.T) {
	for name, opt := range map[string]inboxotel.Option{
		"WithMeterProvider":     inboxotel.WithMeterProvider(nil),
		"WithTracerProvider":    inboxotel.WithTracerProvider(nil),
		"WithTextMapPropagator": inboxotel.WithTextMapPropagator(nil),
		"WithStatsTTL":          inboxotel.WithStatsTTL(-1),
		"WithLogger":            inboxotel.WithLogger(nil),
		"New":                   nil,
	} {
		if _, err := inboxotel.New(opt); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: New returned %v, want an error naming it", name, err)
		}
	}
	if _, err := inboxotel.New(); err != nil {
		t.Errorf("New with defaults: %v", err)
	}
}
