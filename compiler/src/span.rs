//! Source files and byte spans. Every IR node and diagnostic points back into a file here.

use std::collections::HashMap;

/// Index of a source file in a [`Sources`] set.
pub type FileId = usize;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Span {
    /// The file the range is in.
    pub file: FileId,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span covering `start..end` of `file`.
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span { file, start: start as u32, end: end.max(start) as u32 }
    }

    /// The byte range, for codespan-reporting.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// A span inside this one, `offset..offset+len` bytes from its start (for expression
    /// tokens inside a YAML string scalar).
    pub fn sub(&self, offset: usize, len: usize) -> Span {
        let start = (self.start as usize + offset).min(self.end as usize);
        let end = (start + len).min(self.end as usize).max(start);
        Span::new(self.file, start, end)
    }
}

/// Reads spec files by name. The compiler never touches the file system itself: the CLI
/// hands it a loader (reading the disk), tests hand it an in-memory map.
pub trait SourceLoader {
    /// Returns the text of `path` (already resolved against the importing file), or an
    /// error message such as "No such file or directory".
    fn load(&self, path: &str) -> Result<String, String>;
}

/// An in-memory loader: file name to text.
#[derive(Default)]
pub struct MemoryLoader(pub HashMap<String, String>);

impl SourceLoader for MemoryLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        self.0.get(path).cloned().ok_or_else(|| "no such file".to_string())
    }
}

/// All source files read during one compilation, for rendering diagnostics.
#[derive(Default)]
pub struct Sources {
    files: Vec<(String, String)>,
}

impl Sources {
    /// Adds a file and returns its id.
    pub fn add(&mut self, name: &str, text: String) -> FileId {
        self.files.push((name.to_string(), text));
        self.files.len() - 1
    }
    /// The file's name as given to the loader.
    pub fn name(&self, id: FileId) -> &str {
        &self.files[id].0
    }
    /// The file's text.
    pub fn text(&self, id: FileId) -> &str {
        &self.files[id].1
    }
    /// Finds an already loaded file.
    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files.iter().position(|(n, _)| n == name)
    }
    /// `line:col` (1-based) of a byte offset.
    pub fn line_col(&self, id: FileId, offset: u32) -> (usize, usize) {
        let text = self.text(id);
        let offset = (offset as usize).min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, col)
    }
    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }
    /// True when no file was read.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl<'a> codespan_reporting::files::Files<'a> for Sources {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files.get(id).map(|f| f.0.as_str()).ok_or(codespan_reporting::files::Error::FileMissing)
    }
    fn source(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files.get(id).map(|f| f.1.as_str()).ok_or(codespan_reporting::files::Error::FileMissing)
    }
    fn line_index(&'a self, id: FileId, byte_index: usize) -> Result<usize, codespan_reporting::files::Error> {
        let text = self.source(id)?;
        let byte_index = byte_index.min(text.len());
        Ok(text.as_bytes()[..byte_index].iter().filter(|&&b| b == b'\n').count())
    }
    fn line_range(&'a self, id: FileId, line_index: usize) -> Result<std::ops::Range<usize>, codespan_reporting::files::Error> {
        let text = self.source(id)?;
        let mut start = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if i == line_index {
                return Ok(start..start + line.len());
            }
            start += line.len();
        }
        if line_index == text.split_inclusive('\n').count() {
            return Ok(text.len()..text.len());
        }
        Err(codespan_reporting::files::Error::LineTooLarge { given: line_index, max: text.lines().count() })
    }
}
