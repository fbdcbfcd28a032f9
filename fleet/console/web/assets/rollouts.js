// Configs and rollouts: shown once the fleet serves the rollout API.
import { h } from './lib.js';

export function hasRollouts() { return false; }

export async function rolloutsPage() {
  return { title: 'Rollouts', body: h('div', { class: 'panel empty' }, h('strong', {}, 'Rollouts are not available on this fleet yet'), 'Use `fleetprof config apply` meanwhile.') };
}

export async function rolloutPage() { return rolloutsPage(); }
