// Preact with htm's tagged templates: components without a build step, so the files
// served are the files in the repository.
import { h } from "preact";
import htm from "htm";

export const html = htm.bind(h);
