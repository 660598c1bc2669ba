//! The `README.md` at the mount root: the layout taught to an agent in a dozen lines.

/// The file name at the mount root.
pub const FILE_NAME: &str = "README.md";

/// The root README.
pub fn mount_readme() -> String {
    "# nkmc mount\n\
     \n\
     Each folder here is an API, named by its domain. Files are API calls; the gateway adds\n\
     the credentials, so you never see or need a key.\n\
     \n\
     - `cat DOMAIN/skill.md` describes a service: its calls and the files that make them.\n\
     - `cat FILE` sends the file's GET and prints the response body.\n\
     - `echo '{...}' > FILE` sends the file's POST/PUT/PATCH with that JSON; a file that has\n\
       no GET then reads as the response. `rm FILE` sends its DELETE.\n\
     - `name` is a call and `name.d/` holds what is under it: `cat models`, `cat models.d/gpt-4o`.\n\
     - Any name works in place of an id (`{id}` in skill.md); query strings go in the name:\n\
       `cat 'search?q=fuse&per_page=5'`.\n\
     - Errors come back as errno: ENOENT (404), EACCES (401/403), EINVAL (400), EIO (5xx),\n\
       ETIMEDOUT (no answer in time).\n"
        .to_owned()
}
